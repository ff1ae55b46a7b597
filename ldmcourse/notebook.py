"""What every notebook needs to consume the model zoo honestly: the model, and how it was made, without paths.

Committed notebook outputs must not print paths of the machine that ran them (issue 15), yet training
on first use prints progress lines and the zoo's records name folders. :func:`from_zoo` loads an entry
(training it on first use, with its progress shown live) and prints which entry it is, how it was
trained, for how long, on what machine and at what load, and the command that reproduces it; every
path in that output is written relative to the checkout (``runs/zoo/...``) or to ``$LDMCOURSE_ZOO``.

    from ldmcourse.notebook import from_zoo
    ae = from_zoo("kl-f4-mnist5k", profile=PROFILE, device=DEVICE)
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import torch

from . import zoo

CHECKOUT = Path(__file__).resolve().parents[1]


def rel(text: object, root: str | Path | None = None) -> str:
    """``text`` with this machine's paths written relative to the checkout (``runs/zoo/...``, ``benchmarks/...``)."""
    text = str(text)
    zoo_short = "$LDMCOURSE_ZOO/" if os.environ.get("LDMCOURSE_ZOO") else "runs/zoo/"
    for base, short in ((zoo.root(), zoo_short), (Path(root) if root else CHECKOUT, "")):
        for b in sorted({str(Path(base)), str(Path(base).resolve())}, key=len, reverse=True):
            text = text.replace(b + os.sep, short).replace(b, short.rstrip("/") or ".")
    return text


class RelativePaths(io.TextIOBase):
    """A text stream that writes through to ``stream`` with :func:`rel` applied (training output stays live)."""

    def __init__(self, stream, root: str | Path | None = None):
        self.stream, self.root = stream, root

    def write(self, s):
        self.stream.write(rel(s, self.root))
        return len(s)

    def flush(self):
        self.stream.flush()


def describe(model) -> str:
    """The lines :func:`from_zoo` prints for a model that ``zoo.get`` returned (its ``model.zoo`` record)."""
    rec, m = model.zoo, model.zoo["machine"]
    return "\n".join([
        f"[zoo] {rec['entry']} ({rec['profile']} profile, key {rec['key']}): {rec.get('description', '')}",
        f"[zoo]   {rec['steps']} steps, {rec['train_seconds']:.0f} s of training in {len(rec['sessions'])} session(s) on "
        f"{m['device']} ({m['cpu_count']} cpus, {m['torch_threads']} torch threads, load average {m['loadavg']})",
        f"[zoo]   reproduce: {rec['command']}",
        f"[zoo]   which runs: {rel(rec['train_command'])}"])


def from_zoo(name: str, profile: str | None = None, device: str | torch.device = "cpu", verbose: bool = True):
    """``zoo.get(name)`` at ``profile`` (trained on first use), in eval mode; prints how the model was made."""
    out = RelativePaths(sys.stdout)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):  # first-use training: progress, no paths
        model = zoo.get(name, profile=profile, device=device, verbose=False)
    if verbose:
        print(describe(model))
    return model.eval()
