"""Name validation and D-Bus path element encoding (model/names.py)."""

from __future__ import annotations

import re

import pytest
from example_storage.errors import InvalidArgument
from example_storage.model.names import (
    decode_path_element,
    encode_path_element,
    validate_name,
    validate_uuid,
)

HOSTILE_NAMES = [
    "", "_", "__", "_5f", "a", "plain123", "../x", "..", ".", "/", "a/b", "with space",
    "-rf", "x\x00y", "\n", "ü", "日本語", "emoji 🎉", "\udcff", "a_b-c.d", "%2F", "$(reboot)",
    "x" * 255, "é" * 300,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_path_element_round_trip(name):
    encoded = encode_path_element(name)
    assert re.fullmatch(r"[A-Za-z0-9_]+", encoded)
    assert decode_path_element(encoded) == name


def test_path_element_values():
    assert encode_path_element("") == "_"
    assert encode_path_element("_") == "_5f"
    assert encode_path_element("a/b") == "a_2fb"
    assert encode_path_element("ü") == "_c3_bc"
    assert decode_path_element("a_2e_2e") == "a.."


def bytewise(name: str) -> str:
    """The rule, written out: letters and digits stay, every other UTF-8 byte is _xx."""
    return "".join(c if re.fullmatch("[A-Za-z0-9]", c) else
                   "".join(f"_{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in name)


@pytest.mark.parametrize("tail", ["", "ü"])     # ASCII-only names take their own path
def test_every_character_is_encoded_by_the_rule(tail):
    for code in [*range(128), 0xE9, 0x65E5, 0x1F389, 0xDCFF]:
        name = f"a{chr(code)}b{tail}"
        assert encode_path_element(name) == bytewise(name), hex(code)
        assert decode_path_element(encode_path_element(name)) == name


def test_path_elements_are_distinct():
    encoded = [encode_path_element(n) for n in HOSTILE_NAMES]
    assert len(set(encoded)) == len(encoded)


@pytest.mark.parametrize("name", ["", ".", "..", "/", "../x", "a/b", "x\x00", "tab\t",
                                  "-x", "x" * 256, "é" * 128])
def test_bad_names_rejected(name):
    with pytest.raises(InvalidArgument):
        validate_name(name, "pool name")


def test_good_names_kept():
    assert validate_name("virtimages") == "virtimages"
    assert validate_name("x" * 255) == "x" * 255
    assert validate_name("日本語") == "日本語"


def test_uuid_canonicalised():
    assert validate_uuid("70A7EB15-6C34-EE9C-BF57-69E8E5FF3FB2") == (
        "70a7eb15-6c34-ee9c-bf57-69e8e5ff3fb2")
    with pytest.raises(InvalidArgument):
        validate_uuid("not-a-uuid")
