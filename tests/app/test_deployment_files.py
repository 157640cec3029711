"""Docker does not run on our machines, so the deployment files are checked against the code:
every command and option a compose service runs exists in the CLI, every VIGFACE_* variable
is a setting, published ports match what the commands serve, the schema migrates in one place,
and the admin ports are not open to the world."""

import re
from pathlib import Path

import click
import typer.main
import yaml

from app.cli import app
from jobstore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OURS = {n: s for n, s in COMPOSE["services"].items() if "build" in s}


def _cli() -> click.Group:
    return typer.main.get_command(app)


def test_every_vigface_service_runs_an_existing_command_with_existing_options():
    cli = _cli()
    assert OURS, "no service built from docker/Dockerfile"
    for name, svc in OURS.items():
        words = svc["command"]
        cmd = cli.commands.get(words[0])
        assert cmd is not None, f"{name}: no command {words[0]!r}"
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for w in words[1:]:
            if w.startswith("--"):
                assert w.split("=")[0] in known, f"{name}: {words[0]} has no option {w}"


def test_every_vigface_variable_is_a_setting():
    fields = {f"VIGFACE_{k.upper()}" for k in Settings.model_fields}
    env = COMPOSE["x-vigface-env"]
    used = {k for k in env if k.startswith("VIGFACE_")}
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    used |= set(re.findall(r"(VIGFACE_[A-Z_]+)=", dockerfile))
    example = (ROOT / ".env.example").read_text()
    used |= set(re.findall(r"^(VIGFACE_[A-Z_]+)=", example, re.M))
    assert used and used <= fields, sorted(used - fields)


def test_published_ports_match_what_is_served():
    api = OURS["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert any(p.endswith(f":{port}") for p in api["ports"])
    assert str(port) in " ".join(api["healthcheck"]["test"])


def test_migrations_run_once_before_api_and_workers():
    assert OURS["migrate"]["command"] == ["migrate"]
    for name, svc in OURS.items():
        if name == "migrate":
            continue
        dep = svc["depends_on"]
        assert dep["migrate"]["condition"] == "service_completed_successfully", name
        assert svc.get("restart") == "unless-stopped", name


def test_admin_consoles_are_not_published_to_the_world():
    services = COMPOSE["services"]
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert any("--basic-auth" in w for w in services["flower"]["command"])
    console = [p for p in services["minio"]["ports"] if p.endswith("9001")]
    assert console and all(p.startswith("127.0.0.1:") for p in console)
