"""The base of every config model: an unknown key is an error, never a silently ignored one."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
