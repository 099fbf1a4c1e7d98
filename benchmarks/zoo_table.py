"""How the bridge does today on the Hugging Face zoo (tests/zoo/hf_zoo.py): one row per architecture, one
column per step, each cell "ok", "NOT EQUIV (first: <flax path>)", "WRONG: ..." or "raises: <Type: message>".

Steps, for each ``case = hf_zoo.build(name)`` (batch 2):

a. ``bridge.to_torch(case.flax_module, case.variables, case.inputs, check=True)``, then the converted module
   run on batch-3 inputs (torch tensors of the Flax inputs' arrays, same keywords) against Flax at batch 3
   (max abs <= 1e-4).
b. ``bridge.check_equivalence(case.flax_module, case.variables, case.make_reference(), case.inputs,
   torch_inputs=case.torch_inputs)``: the reference is Hugging Face's own PyTorch model with the Flax weights
   loaded by Hugging Face's converter, a correct pair, so anything but EQUIVALENT is a false alarm.
b'. the same with ``channels_last=False``, for the architectures whose HF port convolves channels-first
   (``CHANNELS_FIRST``; "n/a" elsewhere): the documented setting for a channels-first port.
c. ``bridge.load_into(case.make_torch(), ...)``, then every tensor of its ``state_dict()`` compared exactly
   with the reference's; when some differ, the cell also says how many were left at the (seeded) initial
   values, i.e. not loaded at all, and the port's output max abs difference from Flax.
d. Three porting mistakes planted, one at a time, in the reference port (``PLANTS``): a square weight
   transposed, two same-shape projections of one module swapped, a wrong norm epsilon. Each must be NOT
   EQUIVALENT with its first divergence at the planted module, its parent, or one of the two swapped
   ("located"); the cell counts located/planted, how many of those came with a hint, and names the misses.

Run: ``python benchmarks/zoo_table.py [--json FILE] [--timeout S] [--in-process] [ARCH ...]`` with
transformers < 5 installed. Each architecture runs in its own process (``--timeout`` seconds, default 900),
so one that hangs or crashes costs only its own row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))

STEPS = (
    "a. to_torch check=True + batch 3",
    "b. check_equivalence vs HF-converted",
    "b'. same, channels_last=False",
    "c. load_into vs HF state_dict",
    "d. planted mistakes located",
)
# b' runs only where the HF port is channels-first (convolutions on NCHW / NCL); elsewhere it is "n/a"
CHANNELS_FIRST = ("vit", "resnet", "clip_vision", "wav2vec2", "whisper")
BATCH3_ATOL = 1e-4


def _short(error: BaseException, n: int = 60) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"raises: {type(error).__name__}: {text[:n]}"


def _divergence(report: Any) -> dict[str, Any] | None:
    first = getattr(report, "first_divergence", None)
    if first is None:
        return None
    return {
        "index": first.index, "flax_path": first.flax_path, "torch_name": first.torch_name, "kind": first.kind,
        "mode": first.mode, "hint": (first.hint or "")[:80],
    }  # fmt: skip


def _output(out: Any, key: str) -> Any:
    try:
        return out[key]
    except (KeyError, TypeError, IndexError):
        return getattr(out, key)


def _step_a(case: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    import bridge

    try:
        module = bridge.to_torch(case.flax_module, case.variables, case.inputs, check=True)
    except bridge.NotEquivalentError as e:
        first = _divergence(e.report)
        where = first["flax_path"] if first else "?"
        return {"cell": f"NOT EQUIV (first: {where})", "first_divergence": first, "error": str(e)[:2000]}
    except Exception as e:
        return {"cell": _short(e), "error": traceback.format_exc()[-3000:]}
    try:
        inputs3, _ = case.batch_inputs(3)
        arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs3.items() if isinstance(v, np.ndarray)}
        with torch.no_grad():
            out = _output(module(**arrays), case.output_key)
        expected = np.asarray(_output(case.flax_module.apply(case.variables, **inputs3), case.output_key))
        got = out.detach().numpy()
        if got.shape != expected.shape:
            return {"cell": f"b3 WRONG SHAPE {tuple(got.shape)} vs {tuple(expected.shape)}"}
        difference = float(np.abs(got - expected).max())
    except Exception as e:
        return {"cell": "b3 " + _short(e), "error": traceback.format_exc()[-3000:]}
    if not difference <= BATCH3_ATOL:
        return {"cell": f"b3 MISMATCH (max abs {difference:.1e})", "batch3_max_abs": difference}
    return {"cell": "ok", "batch3_max_abs": difference}


def _step_b(case: Any, **options: Any) -> dict[str, Any]:
    import bridge

    try:
        report = bridge.check_equivalence(
            case.flax_module, case.variables, case.make_reference(), case.inputs, torch_inputs=case.torch_inputs,
            **options,
        )  # fmt: skip
    except Exception as e:
        return {"cell": _short(e), "error": traceback.format_exc()[-3000:]}
    first = _divergence(report)
    if report.ok:
        return {"cell": "ok", "first_divergence": first}
    where = first["flax_path"] if first else "?"
    lines = str(report).splitlines()
    failing = [line for line in lines if line.startswith((">>", "!!"))]  # the failing rows and the verdict
    summary = "\n".join(lines[:3] + failing[:40] + lines[-2:])
    return {"cell": f"NOT EQUIV (first: {where})", "first_divergence": first, "report": summary}


def _step_b_channels_first(case: Any) -> dict[str, Any]:
    if case.name not in CHANNELS_FIRST:
        return {"cell": "n/a"}
    return _step_b(case, channels_last=False)


def _step_c(case: Any) -> dict[str, Any]:
    import torch

    import bridge

    try:
        port = case.make_torch()
        bridge.load_into(case.flax_module, case.variables, port, inputs=case.inputs, torch_inputs=case.torch_inputs)
    except Exception as e:
        return {"cell": _short(e), "error": traceback.format_exc()[-3000:]}
    got, want = port.state_dict(), case.make_reference().state_dict()
    differ = sorted(set(got) ^ set(want))
    for name in sorted(set(got) & set(want)):
        a, b = got[name], want[name]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            differ.append(name)
    if not differ:
        return {"cell": "ok", "tensors": len(want)}
    fresh = case.make_torch().state_dict()  # the same seeded init: what load_into did not touch
    at_init = [n for n in differ if n in fresh and n in got and torch.equal(got[n], fresh[n])]
    out_max_abs = _port_difference(case, port)
    head = ", ".join(differ[:2]) + (", ..." if len(differ) > 2 else "")
    cell = (
        f"WRONG: {len(differ)}/{len(want)} tensors differ, {len(at_init)} left at init; "
        f"out max abs {out_max_abs:.1e} ({head})"
    )
    return {"cell": cell, "differ": differ, "left_at_init": at_init, "tensors": len(want), "out_max_abs": out_max_abs}


def _plant_transposed(port: Any) -> str | None:
    """The first square 2-D weight of a Linear-like module (Linear, GPT-2's Conv1D) transposed."""
    import torch

    for name, module in port.named_modules():
        weight = getattr(module, "weight", None)
        square = isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[0] == weight.shape[1]
        if square and type(module).__name__ in ("Linear", "Conv1D"):
            with torch.no_grad():
                weight.copy_(weight.T.clone())
            return name
    return None


def _plant_swapped(port: Any) -> str | None:
    """The weights of the first two same-shape Linear children of one module swapped (query and key)."""
    import torch

    for name, module in port.named_modules():
        linears = [(n, c) for n, c in module.named_children() if isinstance(c, torch.nn.Linear)]
        for (_, a), (_, b) in itertools.pairwise(linears):
            if a.weight.shape == b.weight.shape:
                with torch.no_grad():
                    saved = a.weight.clone()
                    a.weight.copy_(b.weight)
                    b.weight.copy_(saved)
                return name
    return None


def _plant_eps(port: Any) -> str | None:
    """The first normalisation's epsilon (``eps`` or ``variance_epsilon``) set to 0.1."""
    for name, module in port.named_modules():
        for attribute in ("eps", "variance_epsilon"):
            if isinstance(getattr(module, attribute, None), float):
                setattr(module, attribute, 0.1)
                return name
    return None


PLANTS = {"transposed": _plant_transposed, "swapped": _plant_swapped, "eps": _plant_eps}


def _step_d(case: Any) -> dict[str, Any]:
    import bridge

    located, planted, hinted, misses = 0, 0, 0, []
    for kind, plant in PLANTS.items():
        port = case.make_reference()
        where = plant(port)
        if where is None:
            continue
        planted += 1
        try:
            report = bridge.check_equivalence(
                case.flax_module, case.variables, port, case.inputs, torch_inputs=case.torch_inputs, grads=False
            )
        except Exception as e:
            misses.append(f"{kind} at {where}: {_short(e, 40)}")
            continue
        first = report.first_divergence
        at = "" if first is None else first.torch_name
        parent = where.rpartition(".")[0]
        if not report.ok and (at in (where, parent) or at.rpartition(".")[0] == where):  # the module, its parent,
            located += 1  # or (a swap planted in a module) one of the two swapped in it
            hinted += bool(first is not None and first.hint)
        else:
            misses.append(f"{kind} at {where}: " + ("EQUIVALENT" if report.ok else f"first at {at or '?'}"))
    cell = f"{located}/{planted} ({hinted} with a hint)" + (f" missed: {'; '.join(misses)}" if misses else "")
    return {"cell": cell, "located": located, "planted": planted, "hinted": hinted, "misses": misses}


def _port_difference(case: Any, port: Any) -> float:
    """The loaded port's output against Flax's, max abs (nan when it cannot run)."""
    import numpy as np
    import torch

    try:
        with torch.no_grad():
            got = _output(port(**case.torch_inputs), case.output_key).numpy()
        expected = np.asarray(_output(case.flax_module.apply(case.variables, **case.inputs), case.output_key))
        return float(np.abs(got - expected).max())
    except Exception:
        return float("nan")


def run_one(name: str) -> dict[str, Any]:
    import hf_zoo

    row: dict[str, Any] = {"arch": name}
    start = time.perf_counter()
    try:
        case = hf_zoo.build(name)
    except Exception as e:
        cell = {"cell": "build " + _short(e), "error": traceback.format_exc()[-3000:]}
        return {**row, **{step: cell for step in STEPS}, "seconds": {"build": time.perf_counter() - start}}
    seconds = {"build": time.perf_counter() - start}
    for step, function in zip(STEPS, (_step_a, _step_b, _step_b_channels_first, _step_c, _step_d), strict=True):
        start = time.perf_counter()
        row[step] = function(case)
        seconds[step.split(".")[0]] = round(time.perf_counter() - start, 2)
    row["seconds"] = seconds
    return row


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _in_subprocess(name: str, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--one", name, "--json", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"arch": name, **{s: {"cell": f"timeout after {timeout:.0f} s"} for s in STEPS}}
        if out.exists():
            return json.loads(out.read_text())
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"arch": name, **{s: {"cell": f"process died: {tail[0][:60]}"} for s in STEPS}}


def table(rows: list[dict[str, Any]]) -> str:
    header = ("arch", *STEPS, "seconds (build/a/b/b'/c/d)")
    body = []
    for row in rows:
        s = row.get("seconds", {})
        times = "/".join(f"{s[k]:.0f}" if k in s else "-" for k in ("build", "a", "b", "b'", "c", "d"))
        body.append((row["arch"], *(row.get(step, {"cell": "-"})["cell"] for step in STEPS), times))
    widths = [max(len(str(r[i])) for r in (header, *body)) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (header, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    details = []
    for row in rows:
        for step in STEPS:
            if step not in row:
                continue
            first = row[step].get("first_divergence")
            if first and row[step]["cell"] != "ok":
                details.append(
                    f"{row['arch']} {step.split('.')[0]}. first divergence: #{first['index']} {first['kind']} flax "
                    f"{first['flax_path']!r} <-> torch {first['torch_name']!r} ({first['mode']}); "
                    f"hint: {first['hint']!r}"
                )
            elif "differ" in row[step]:
                at_init = set(row[step].get("left_at_init", ()))
                names = [n + (" (at init)" if n in at_init else "") for n in row[step]["differ"]]
                details.append(f"{row['arch']} {step.split('.')[0]}. differing tensors: {', '.join(names[:10])}")
    return "\n".join(lines + (["", *details] if details else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archs", nargs="*", help="architectures (default: all of hf_zoo.ARCHITECTURES)")
    parser.add_argument("--json", help="also write the rows (cells, divergences, errors, timings) as JSON")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per architecture (subprocess)")
    parser.add_argument("--in-process", action="store_true", help="run every architecture in this process")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _quiet()
    if args.one:
        row = run_one(args.one)
        Path(args.json).write_text(json.dumps(row, indent=1, default=str))
        return
    try:
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            raise ImportError
        import hf_zoo
    except ImportError:
        raise SystemExit("needs transformers < 5 ('transformers<5'), which still has the Flax models") from None
    rows = []
    for name in args.archs or hf_zoo.ARCHITECTURES:
        row = run_one(name) if args.in_process else _in_subprocess(name, args.timeout)
        rows.append(row)
        print(f"{name}: " + " | ".join(row[s]["cell"] for s in STEPS), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
