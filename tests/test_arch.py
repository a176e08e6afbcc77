import pytest

from moejit.errors import MoejitError
from moejit.jit.arch import arch_from_capability, gencode_flags, normalize_arch


@pytest.mark.parametrize("spelling, expected", [
    ("80", "80"), (80, "80"), ("sm_80", "80"), ("8.0", "80"), ("86", "86"), ("sm_89", "89"),
    ("90", "90a"), ("90a", "90a"), ("sm_90a", "90a"), ("9.0", "90a"), ("compute_90a", "90a"), ("100", "100a"),
])
def test_normalize_arch(spelling, expected):
    assert normalize_arch(spelling) == expected


@pytest.mark.parametrize("bad", ["75", "sm_70", "7.5", "abc", "", "9"])
def test_normalize_arch_rejects(bad):
    with pytest.raises(MoejitError):
        normalize_arch(bad)


def test_capability_mapping():
    assert arch_from_capability((9, 0)) == "90a"
    assert arch_from_capability((8, 0)) == "80"
    assert arch_from_capability((8, 6)) == "86"
    assert arch_from_capability((8, 9)) == "89"
    with pytest.raises(MoejitError, match="8.0"):
        arch_from_capability((7, 5))


def test_gencode_flags():
    assert gencode_flags("90") == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert gencode_flags("80") == ["-gencode=arch=compute_80,code=sm_80"]
    assert gencode_flags("sm_89") == ["-gencode=arch=compute_89,code=sm_89"]
