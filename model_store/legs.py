"""A generator trained in legs: fold a run that warm-started from an entry back into it.

Long CPU training runs in legs: each ``vigface train-dit --set init_from=ENTRY`` starts from
the entry's weights, and its own card counts only its own steps. ``vigface models add RUN
--continues ENTRY`` makes one entry of the two (:func:`continued_card` and
:func:`merge_leg`):

* the card counts steps and minutes over every leg, and names each precision in order;
* ``measurements/training_legs.json`` lists the legs, the new one with its full training
  config (so a changed setting, such as a stronger identity term, is on record);
* one ``train_log.jsonl`` runs over all legs (the new leg's steps and seconds shifted on);
* what describes real people or stage 1 carries over (the judge's real reference, the shown
  pose of real faces, the sampler defaults, an attached upsampler);
* what described the old weights does not: the filters' thresholds (``vigface calibrate``
  must run again; until then it takes only orders that give their own), the sample grids, the
  judge capacity and every other measurement but the training curve. They are listed in
  the command's output, and the old entry keeps them in git.

A leg is refused when it did not start from that entry, or its stage-1 model or its
transformer or its latent space (the autoencoder's encoder) differ: then it is a new model,
not a continuation. A DiT leg trains the transformer only, so the entry keeps its own
autoencoder (a decoder leg may have improved it meanwhile).

A latent entry's autoencoder goes on in legs of its own: ``vigface train-autoencoder
--init-from ENTRY --set train_encoder=false`` trains the decoder alone, and ``vigface models
add RUN --continues ENTRY`` (:func:`merge_decoder_leg`) puts the new decoder into the entry.
The latent space is untouched, so its transformer stays valid; what the entry draws changes,
so thresholds, grids and measurements of the old faces are left behind as for a DiT leg.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from vigface.model_card import CARD_FILE, MEASUREMENTS_DIR, write_card, write_measurement
from vigface.training.dit_data import latent_space_digest

LEGS = "training_legs"
AUTOENCODER = "autoencoder"
# measurements that are history of the whole model rather than of one set of weights
CARRIED_MEASUREMENTS = {"training_curve.json"}
# card sections that describe real people, stage 1 or product choices, not the weights
CARRIED_SECTIONS = (
    "name", "judge", "shown_pose_reference", "sampler_defaults", "upsampler", "autoencoder",
)  # fmt: skip
# what a leg's entry in training_legs.json takes from that leg's card
LEG_KEYS = ("steps", "train_minutes", "precision", "device", "batch_size")


class NotAContinuation(ValueError):
    """The run did not warm-start from the entry, or changed what a continuation keeps."""


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _latent_space(entry: Path) -> str | None:
    """What decides a latent entry's latents (encoder and config), None for a pixel one."""
    folder = entry / AUTOENCODER
    return latent_space_digest(folder) if folder.is_dir() else None


def _dit_config(entry: Path) -> dict:
    cfg = json.loads((entry / "dit" / "config.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def check_continuation(prev: Path, entry: Path, run_card: dict) -> None:
    """Raise :class:`NotAContinuation` unless ``entry`` (a run as ``vigface models add``
    stored it, with card ``run_card``) warm-started from ``prev`` with the same stage-1 model
    and transformer, and the same latent space (a latent DiT draws in its latents)."""
    init = run_card.get("init_from")
    if not init:
        raise NotAContinuation(f"{entry} did not warm-start (its card has no init_from)")
    same = Path(init).resolve() == prev.resolve() or Path(init).name == prev.name
    if not same:
        raise NotAContinuation(f"{entry} warm-started from {init}, not from {prev}")
    if _digest(entry / "fr") != _digest(prev / "fr"):
        raise NotAContinuation(f"{entry}'s stage-1 model (fr/) differs from {prev}'s")
    if _latent_space(entry) != _latent_space(prev):
        raise NotAContinuation(
            f"{entry}'s autoencoder encodes other latents than {prev}'s: its DiT learnt "
            "another latent space (train the leg with --set autoencoder=<the entry>/autoencoder)"
        )
    mine, theirs = _dit_config(entry), _dit_config(prev)
    if mine != theirs:
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise NotAContinuation(f"{entry}'s DiT differs from {prev}'s in {', '.join(diff)}")


def previous_legs(prev: Path, card: dict) -> list[dict]:
    """The legs ``prev`` was trained in: its ``training_legs.json``, or one leg from its card."""
    path = prev / MEASUREMENTS_DIR / f"{LEGS}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return [{k: card[k] for k in LEG_KEYS if card.get(k) is not None}]


def precision_chain(prev: dict, new: dict) -> str | None:
    """Each precision the legs trained in, in order: "float32 then bfloat16"."""
    precisions = [p for p in (prev.get("precision") or "").split(" then ") if p]
    if new.get("precision") and (not precisions or precisions[-1] != new["precision"]):
        precisions.append(new["precision"])
    return " then ".join(precisions) or None


def without_old_faces(card: dict) -> dict:
    """``card`` less what described the faces of the weights it was written for: the filters'
    thresholds, the grids and what the judge saw (``capacity.judge``)."""
    out = {k: v for k, v in card.items() if k not in ("filters", "grids", "grid_note")}
    if (out.get("capacity") or {}).get("judge"):
        out["capacity"] = {k: v for k, v in out["capacity"].items() if k != "judge"}
    return out


def continued_card(prev_card: dict, run_card: dict, prev_name: str, leg_command: str) -> dict:
    """The merged card: the run's own (its weights), with cumulative steps and minutes and the
    carried sections of the previous card; no filters, grids or judge capacity."""
    card = without_old_faces(run_card)
    card["steps"] = int(prev_card.get("steps") or 0) + int(run_card.get("steps") or 0)
    card["train_minutes"] = round(
        float(prev_card.get("train_minutes") or 0) + float(run_card.get("train_minutes") or 0), 1
    )
    card["precision"] = precision_chain(prev_card, run_card)
    card["init_from"] = prev_card.get("init_from")  # where the first leg started
    for key in CARRIED_SECTIONS:
        if prev_card.get(key) is not None:
            card[key] = prev_card[key]
    capacity = without_old_faces(prev_card).get("capacity")
    if capacity:  # how many rows W_V holds is stage 1's; what the judge saw was the weights'
        card["capacity"] = capacity
    card["reproduce"] = [
        *prev_card.get("reproduce", []),
        f"next leg, from {prev_name} at {prev_card.get('steps')} steps "
        f"({run_card.get('steps')} steps, {run_card.get('precision')}, "
        f"{run_card.get('device')}): {leg_command}",
        f"vigface models add RUN --name NAME --continues {prev_name}",
    ]
    return card


def joined_log(prev: Path, run: Path, prev_steps: int) -> str:
    """``prev``'s train log, then ``run``'s with its steps and seconds shifted on."""
    out = []
    last_elapsed = 0.0
    prev_log = prev / "train_log.jsonl"
    if prev_log.is_file():
        for line in prev_log.read_text().splitlines():
            if line.strip():
                out.append(line)
                last_elapsed = float(json.loads(line).get("elapsed_s", last_elapsed))
    run_log = run / "train_log.jsonl"
    if run_log.is_file():
        for line in run_log.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "step" in rec:
                rec["step"] = int(rec["step"]) + prev_steps
            if "elapsed_s" in rec:
                rec["elapsed_s"] = round(float(rec["elapsed_s"]) + last_elapsed, 1)
            out.append(json.dumps(rec))
    return "\n".join(out) + ("\n" if out else "")


def merge_leg(prev: Path, run: Path, entry: Path, prev_name: str, leg_command: str) -> list[str]:
    """Turn ``entry`` (``run`` as ``vigface models add`` saved it) into the continuation of
    ``prev``. Returns what was left behind (it described the previous weights)."""
    from vigface.training.dit import plot_losses

    run_card = json.loads((entry / CARD_FILE).read_text())
    check_continuation(prev, entry, run_card)
    prev_card = json.loads((prev / CARD_FILE).read_text())
    config_path = run / "train_config.json"
    leg = {k: run_card[k] for k in LEG_KEYS if run_card.get(k) is not None}
    leg["init_from"] = f"{prev_name} at {prev_card.get('steps')} steps"
    if config_path.is_file():
        leg["config"] = json.loads(config_path.read_text())
    legs = [*previous_legs(prev, prev_card), leg]
    write_card(entry, continued_card(prev_card, run_card, prev_name, leg_command))
    write_measurement(entry, LEGS, legs)
    (entry / "train_log.jsonl").write_text(joined_log(prev, run, int(prev_card.get("steps") or 0)))
    plot_losses(entry / "train_log.jsonl", entry / "loss_curve.png")
    if (prev / AUTOENCODER).is_dir():  # the entry's decoder, however many legs it had since
        shutil.rmtree(entry / AUTOENCODER)
        shutil.copytree(prev / AUTOENCODER, entry / AUTOENCODER)
    if (prev / "upsampler").is_dir() and not (entry / "upsampler").exists():
        shutil.copytree(prev / "upsampler", entry / "upsampler")
    return _leave_behind(prev, prev_card, entry)


def _leave_behind(prev: Path, prev_card: dict, entry: Path) -> list[str]:
    """Carry the training history from ``prev`` into ``entry``; return what described the
    previous faces and was not carried."""
    left = [f"card: {k}" for k in ("filters", "grids") if prev_card.get(k)]
    if (prev_card.get("capacity") or {}).get("judge"):
        left.append("card: capacity.judge")
    (entry / MEASUREMENTS_DIR).mkdir(exist_ok=True)
    measured = prev / MEASUREMENTS_DIR
    for f in sorted(measured.iterdir()) if measured.is_dir() else []:
        if f.name in CARRIED_MEASUREMENTS:
            shutil.copy2(f, entry / MEASUREMENTS_DIR / f.name)
        elif f.name != f"{LEGS}.json":
            left.append(f"{MEASUREMENTS_DIR}/{f.name}")
    return left


def merge_decoder_leg(prev: Path, run: Path, entry: Path, prev_name: str, leg_command: str):
    """Make ``entry`` (a copy being written) ``prev`` with the decoder that the autoencoder run
    ``run`` trained from ``prev``'s, the encoder frozen. Returns what was left behind."""
    trained = run / AUTOENCODER
    ae_card = json.loads((trained / "card.json").read_text())
    if not (prev / AUTOENCODER).is_dir():
        raise NotAContinuation(f"{prev} has no autoencoder/ (a pixel-space generator)")
    prev_ae = json.loads((prev / AUTOENCODER / "card.json").read_text())
    init = ae_card.get("init_from")  # the autoencoder folder train-autoencoder started from
    here = (prev / AUTOENCODER).resolve()
    same = init and (Path(init).resolve() == here or Path(init).parent.name == prev.name)
    if not same:
        raise NotAContinuation(f"{run} started from {init}, not from {prev}'s autoencoder")
    if ae_card.get("train_encoder", True):
        raise NotAContinuation(
            f"{run} trained its encoder too: that is a new latent space, and {prev}'s DiT "
            "draws in the old one (train with --set train_encoder=false)"
        )
    if latent_space_digest(trained) != latent_space_digest(prev / AUTOENCODER):
        raise NotAContinuation(f"{run}'s autoencoder encodes other latents than {prev}'s")
    prev_card = json.loads((prev / CARD_FILE).read_text())
    merged_ae = {
        **ae_card,
        "steps": int(prev_ae.get("steps") or 0) + int(ae_card.get("steps") or 0),
        "train_minutes": round(
            float(prev_ae.get("train_minutes") or 0) + float(ae_card.get("train_minutes") or 0), 1
        ),
        "precision": precision_chain(prev_ae, ae_card),
        "encoder_steps": prev_ae.get("encoder_steps", prev_ae.get("steps")),
        "init_from": prev_ae.get("init_from"),
    }
    shutil.rmtree(entry / AUTOENCODER)
    shutil.copytree(trained, entry / AUTOENCODER)
    (entry / AUTOENCODER / "card.json").write_text(json.dumps(merged_ae, indent=2) + "\n")
    card = without_old_faces(prev_card)
    card["autoencoder"] = merged_ae
    card["reproduce"] = [
        *prev_card.get("reproduce", []),
        f"decoder leg, from {prev_name}'s autoencoder at {prev_ae.get('steps')} steps "
        f"({ae_card.get('steps')} steps, {ae_card.get('precision')}): {leg_command}",
    ]
    leg = {k: ae_card[k] for k in LEG_KEYS if ae_card.get(k) is not None}
    leg["part"] = "decoder"
    leg["init_from"] = f"{prev_name}'s autoencoder at {prev_ae.get('steps')} steps"
    config_path = run / "train_config.json"
    if config_path.is_file():
        leg["config"] = json.loads(config_path.read_text())
    # the copy held the old faces' measurements: _leave_behind carries back what still holds
    shutil.rmtree(entry / MEASUREMENTS_DIR, ignore_errors=True)
    left = _leave_behind(prev, prev_card, entry)
    if (entry / "grids").is_dir():
        left.append("grids/")
        shutil.rmtree(entry / "grids")
    write_card(entry, card)
    write_measurement(entry, LEGS, [*previous_legs(prev, prev_card), leg])
    return left
