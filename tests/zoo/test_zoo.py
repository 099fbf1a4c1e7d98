"""Hugging Face's Flax models against Hugging Face's own PyTorch classes (``nox -s zoo``; needs transformers<5).

Implementations written by others, at tiny random configs (``hf_zoo.build``): the pair loaded by Hugging Face's
own converter is correct, so the check must call it EQUIVALENT (anything else is a false alarm), and
``load_into`` into a fresh Hugging Face model must end with exactly the converter's tensors or refuse with
``LayerMismatchError``: never a wrong or missing tensor in silence.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch

import bridge

from . import hf_zoo

pytestmark = pytest.mark.filterwarnings("ignore")  # transformers' deprecation notices about its Flax classes


@pytest.fixture(scope="module", params=hf_zoo.ARCHITECTURES)
def case(request: pytest.FixtureRequest) -> hf_zoo.ZooCase:
    return hf_zoo.build(request.param)


def test_correct_pair_is_equivalent(case: hf_zoo.ZooCase) -> None:
    report = bridge.check_equivalence(
        case.flax_module, case.variables, case.make_reference(), case.inputs, torch_inputs=case.torch_inputs
    )
    assert report.ok, f"false alarm on Hugging Face's correctly loaded {case.name}:\n{report}"


def test_load_into_is_right_or_refuses(case: hf_zoo.ZooCase) -> None:
    port = case.make_torch()
    untouched = {k: v.clone() for k, v in port.state_dict().items()}
    try:
        bridge.load_into(case.flax_module, case.variables, port, inputs=case.inputs, torch_inputs=case.torch_inputs)
    except bridge.LayerMismatchError:
        changed = [k for k, v in port.state_dict().items() if not torch.equal(v, untouched[k])]
        assert not changed, f"a refused load changed {changed[:5]}"
        return
    want = case.make_reference().state_dict()
    got = port.state_dict()
    wrong = [k for k in want if not torch.equal(got[k], want[k])]
    assert not wrong, f"load_into filled {len(wrong)} tensors of {case.name} wrongly, in silence: {wrong[:6]}"
