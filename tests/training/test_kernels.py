"""Every Triton kernel compiles for an H100, here, without a GPU: Triton's own compiler catches
what its interpreter lets by (types: a loop once re-used a scalar's name), and the PTX shows
whether the wide loads and stores are 16-byte vectors. Scalar bf16 loads made the optimizer's
update take 14 ms instead of 8, and GEGLU ~2.6 times its memory-bound time."""

import re

import pytest

triton = pytest.importorskip("triton")

from herdbook.training import kernels  # noqa: E402
from herdbook.training.masters import ALIGN  # noqa: E402


def ptx(kernel, signature: dict[str, str], constants: dict, multiples_of_16: tuple[str, ...] = ()) -> str:
    """The kernel's PTX for sm_90. Pointer arguments are taken as 16-byte aligned (torch's
    tensors are, and Triton assumes it of them), as are the integers named in
    ``multiples_of_16`` (Triton specialises an integer argument on that, unless told not to)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **dict.fromkeys(constants, "constexpr")}
    hints = {
        (i,): [["tt.divisibility", 16]]
        for i, (name, kind) in enumerate(signature.items())
        if kind.startswith("*") or name in multiples_of_16
    }
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=hints)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]


def pointers(names: str, kind: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), f"*{kind}")


def integers(names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), "i32")


GROUP = {**integers("HW C CG PER SPLITS"), "eps": "fp32"}
TILE = {"BLOCK_HW": 64, "BLOCK_C": 64}
TABLE = pointers("chunks sources", "i64")
CASES = {
    # kernel: (signature, constants, integers that are multiples of 16, what must be vectors)
    "group_sums": (
        {**pointers("x", "bf16"), **pointers("sums", "fp32"), **integers("HW C CG PER SPLITS")},
        {"BLOCK": 2048},
        (),
        (),
    ),
    "grad_sums": (
        {**pointers("x dy weight", "bf16"), **pointers("sums dsums", "fp32"), **GROUP},
        {"BLOCK": 2048},
        (),
        (),
    ),
    "normalize": (
        {
            **pointers("x y weight bias", "bf16"),
            **pointers("sums", "fp32"),
            **integers("HW C CG SPLITS"),
            "eps": "fp32",
        },
        TILE,
        ("C",),
        ("ld", "st"),
    ),
    "grad_input": (
        {
            **pointers("x dy dx weight", "bf16"),
            **pointers("sums dsums channel_sums", "fp32"),
            **integers("HW C CG SPLITS TILES"),
            "eps": "fp32",
        },
        TILE,
        ("C",),
        ("ld", "st"),
    ),
    "geglu": (
        {**pointers("projected out", "bf16"), **integers("ROWS D")},
        {"BLOCK_R": 8, "BLOCK_D": 256},
        ("D",),
        ("ld", "st"),
    ),
    "geglu_grad": (
        {**pointers("projected grad dprojected", "bf16"), **integers("ROWS D")},
        {"BLOCK_R": 8, "BLOCK_D": 256},
        ("D",),
        ("ld", "st"),
    ),
    "add_bias": (
        {**pointers("out bias", "bf16"), **integers("ROWS C")},
        {"BLOCK_R": 64, "BLOCK_C": 64},
        ("C",),
        ("ld", "st"),
    ),
    "attention": (
        {**pointers("q k v out", "bf16"), **integers("LQ LK HEADS q_row k_row v_row out_row"), "scale_log2": "fp32"},
        {"D": 40, "BLOCK_D": 64, "BLOCK_M": 128, "BLOCK_N": 64},
        ("q_row", "k_row", "v_row", "out_row"),
        ("ld", "st"),
    ),
    "chunk_square_sums": (
        {**TABLE, **pointers("working", "bf16"), **pointers("sums", "fp32"), **integers("COUNT")},
        {"BLOCK": 4096, "ALIGN": ALIGN},
        (),
        ("ld",),
    ),
    "chunk_adamw": (
        {
            **TABLE,
            **pointers("master exp_avg exp_avg_sq", "fp32"),
            **pointers("working", "bf16"),
            **integers("COUNT"),
            **pointers("lr_ptr step_ptr scale_ptr", "fp32"),
            **dict.fromkeys(["beta1", "beta2", "eps", "weight_decay"], "fp32"),
        },
        {"BLOCK": 4096, "ALIGN": ALIGN, "WRITE_WORKING": True},
        (),
        ("ld", "st"),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_kernel_compiles_for_an_h100_with_vector_memory_access(name):
    signature, constants, multiples, vectors = CASES[name]
    code = ptx(getattr(kernels, name), signature, constants, multiples)
    for access in vectors:
        assert f"{access}.global.v4.b32" in code, f"{name}: no 16-byte vector {access}"
    if "ld" in vectors and name.startswith(("geglu", "chunk")):
        # their bf16 data (the projection, the gradients) is all wide: no element alone
        assert not re.search(r"ld\.global\.b16", code), f"{name} loads bf16 values one at a time"


def test_every_kernel_is_checked():
    jitted = {name for name, value in vars(kernels).items() if isinstance(value, triton.runtime.JITFunction)}
    assert {name for name in jitted if not name.startswith("_")} == set(CASES)
