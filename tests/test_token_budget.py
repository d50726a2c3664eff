"""Token budget: formula, edge cases, bad input, and a brute-force count on real tensors."""

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vidmem_ext.token_budget import (
    MAX_TEXT_DIGITS,
    MemoryTerm,
    budget_table,
    multi_term_memory_patchification,
    parse_latent,
    parse_term,
    term_grid,
)


def term(frames, t=1, s=1, p=1):
    return {"num_latent_frames": frames, "temporal_stride": t, "spatial_stride": s, "patch_size": p}


def test_framepack_like_example():
    # 60x104 latent; 16 frames at 4x8x8, 2 at 2x4x4, 2 at 1x2x2.
    r = multi_term_memory_patchification([term(16, 4, 4, 2), term(2, 2, 2, 2), term(2, 1, 1, 2)], 60, 104)
    # ceil(16/4)=4 * ceil(ceil(60/4)/2)=8 * ceil(ceil(104/4)/2)=13 ; 1*15*26 ; 2*30*52
    assert r["tokens_per_term"] == [4 * 8 * 13, 1 * 15 * 26, 2 * 30 * 52]
    assert r["total_tokens"] == 416 + 390 + 3120
    assert r["token_fractions"] == [round(416 / 3926, 4), round(390 / 3926, 4), round(3120 / 3926, 4)]


def test_ceiling_at_every_step():
    # ceil(ceil(7/2)/3) = ceil(4/3) = 2, whereas ceil(7/6) = 2 too; pick sizes where the two differ:
    # h=5, s=2, p=2: ceil(ceil(5/2)/2) = ceil(3/2) = 2 vs ceil(5/4) = 2; h=9, s=4, p=3: ceil(3/3)=1 vs ceil(9/12)=1.
    # h=7, s=3, p=2: ceil(ceil(7/3)/2) = ceil(3/2) = 2 but floor division anywhere would give 1.
    assert term_grid(term(5, 2, 3, 2), 7, 7) == (3, 2, 2)
    assert multi_term_memory_patchification([term(5, 2, 3, 2)], 7, 7)["tokens_per_term"] == [12]


def test_dataclass_and_dict_agree():
    d = multi_term_memory_patchification([term(9, 2, 2, 2)], 33, 17)
    m = multi_term_memory_patchification([MemoryTerm(9, 2, 2, 2)], 33, 17)
    assert d == m and d["tokens_per_term"] == [5 * 9 * 5]
    assert multi_term_memory_patchification((MemoryTerm(1),), 2, 3)["tokens_per_term"] == [6]


def test_edge_cases():
    assert multi_term_memory_patchification([], 60, 104) == {
        "tokens_per_term": [],
        "total_tokens": 0,
        "token_fractions": [],
    }
    r = multi_term_memory_patchification([term(0, 2, 2, 2), term(0)], 60, 104)
    assert r == {"tokens_per_term": [0, 0], "total_tokens": 0, "token_fractions": [0.0, 0.0]}
    r = multi_term_memory_patchification([term(3), term(0, 2, 2, 2)], 0, 5)
    assert r["tokens_per_term"] == [0, 0] and r["token_fractions"] == [0.0, 0.0]
    r = multi_term_memory_patchification([term(1, 1, 1, 1), term(0)], 1, 1)
    assert r["tokens_per_term"] == [1, 0] and r["token_fractions"] == [1.0, 0.0]


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        ({"temporal_stride": 1, "spatial_stride": 1, "patch_size": 1}, ValueError, "num_latent_frames"),
        (term(True), TypeError, "num_latent_frames"),
        (term(4, 2.0), TypeError, "temporal_stride"),
        (term(4, 1, "2"), TypeError, "spatial_stride"),
        (term(4, 1, 1, None), TypeError, "patch_size"),
        (term(4, 0), ValueError, "temporal_stride"),
        (term(4, 1, -1), ValueError, "spatial_stride"),
        (term(4, 1, 1, 0), ValueError, "patch_size"),
        (term(-1), ValueError, "num_latent_frames"),
        ([1, 2, 3, 4], TypeError, "terms[1]"),
    ],
)
def test_bad_term_names_index_and_key(bad, exc, words):
    with pytest.raises(exc) as info:
        multi_term_memory_patchification([term(1), bad], 8, 8)
    assert "terms[1]" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize(
    "h, w, exc", [(-1, 4, ValueError), (4, -2, ValueError), (4.0, 4, TypeError), (4, True, TypeError)]
)
def test_bad_latent_size(h, w, exc):
    with pytest.raises(exc, match="latent"):
        multi_term_memory_patchification([term(1)], h, w)


@pytest.mark.parametrize("terms", [None, 5, "abc", term(1), {1, 2}])
def test_terms_must_be_a_sequence(terms):
    with pytest.raises(TypeError, match="terms must be a sequence"):
        multi_term_memory_patchification(terms, 8, 8)


def test_memory_term_validates_itself():
    with pytest.raises(ValueError, match="patch_size"):
        MemoryTerm(4, 1, 1, 0)


class _Index:
    """An integer-like field value (as numpy ints and 0-d integer tensors are): hashes unlike its int."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


def test_memory_term_stores_plain_ints():
    term = MemoryTerm(_Index(3), _Index(2))
    assert term == MemoryTerm(3, 2) and hash(term) == hash(MemoryTerm(3, 2)) and len({term, MemoryTerm(3, 2)}) == 1
    assert all(type(v) is int for v in term.as_dict().values())
    assert json.loads(json.dumps(term.as_dict())) == {
        "num_latent_frames": 3,
        "temporal_stride": 2,
        "spatial_stride": 1,
        "patch_size": 1,
    }


@pytest.mark.parametrize("parse, name", [(parse_term, "term"), (parse_latent, "latent")])
@pytest.mark.parametrize("text", [None, 16, b"16:4:4:2"])
def test_text_forms_take_text_only(parse, name, text):
    with pytest.raises(TypeError, match=f"^{name} must be text"):
        parse(text)


def test_text_numbers_are_bounded_so_tables_always_print():
    big = "1" + "0" * (MAX_TEXT_DIGITS - 1)  # the largest allowed: the table's products still print
    table = budget_table([parse_term(f"{big}:1:1:1")], *parse_latent(f"{big}x{big}"))
    assert table.splitlines()[-1].split()[-2] == "1" + "0" * (3 * (MAX_TEXT_DIGITS - 1))
    too_big = big + "0"
    with pytest.raises(ValueError, match=f"term numbers must have at most {MAX_TEXT_DIGITS} digits"):
        parse_term(f"{too_big}:1:1:1")
    with pytest.raises(ValueError, match=f"latent numbers must have at most {MAX_TEXT_DIGITS} digits"):
        parse_latent(f"4x{too_big}")


def test_tables_print_numbers_past_pythons_digit_limit():
    # budget_table is public: numbers past what Python prints (4300 digits) appear as powers of two,
    # instead of Python's "Exceeds the limit" error, which names nothing
    table = budget_table([MemoryTerm(10**2000, 1, 1, 1)], 2**16000, 2**16000)
    assert table.splitlines()[0] == "latent 2**16000x2**16000"
    assert f"{10**2000}:1:1:1" in table  # 2001 digits: printable, so in full
    tokens = 10**2000 * 2**32000
    assert f"about 2**{tokens.bit_length() - 1}" in table.splitlines()[-1]


def test_import_does_not_import_torch():
    code = (
        "import sys, vidmem_ext.token_budget as tb; "
        "tb.multi_term_memory_patchification([], 1, 1); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


terms_strategy = st.lists(
    st.builds(MemoryTerm, st.integers(0, 9), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)), max_size=4
)


@given(terms=terms_strategy, h=st.integers(0, 23), w=st.integers(0, 23))
def test_formula_matches_a_brute_force_count_on_tensors(terms, h, w):
    torch = pytest.importorskip("torch")
    result = multi_term_memory_patchification(terms, h, w)
    counted = []
    for t in terms:
        latent = torch.randn(1, 1, t.num_latent_frames, h, w)
        if latent.numel() == 0:
            counted.append(0)
            continue
        # pad at the end with replicate to a multiple of each stride, pool by the strides,
        # then pad to a multiple of the patch and cut into patches: count the positions.
        kt, ks = t.temporal_stride, t.spatial_stride
        pad = lambda n, k: (-n) % k  # noqa: E731
        x = torch.nn.functional.pad(
            latent, (0, pad(w, ks), 0, pad(h, ks), 0, pad(t.num_latent_frames, kt)), mode="replicate"
        )
        x = torch.nn.functional.avg_pool3d(x, (kt, ks, ks))
        p = t.patch_size
        x = torch.nn.functional.pad(x, (0, pad(x.shape[-1], p), 0, pad(x.shape[-2], p), 0, 0), mode="replicate")
        patches = x.unfold(3, p, p).unfold(4, p, p)  # (1, 1, T', H'/p, W'/p, p, p)
        counted.append(math.prod(patches.shape[2:5]))
    assert result["tokens_per_term"] == counted
    assert result["total_tokens"] == sum(counted)
    if sum(counted):
        assert abs(sum(result["token_fractions"]) - 1) <= 5e-4 * max(1, len(terms))


def test_cli_budget_table_and_json():
    out = subprocess.run([sys.executable, "-m", "vidmem_ext", "budget"], capture_output=True, text=True, check=True)
    assert "3926" in out.stdout and "4 x 8 x 13" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "budget", "--latent", "7x7", "--term", "5:2:3:2", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == '{"tokens_per_term": [12], "total_tokens": 12, "token_fractions": [1.0]}'
    bad = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "budget", "--term", "5:0:1:1"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "temporal_stride" in bad.stderr
