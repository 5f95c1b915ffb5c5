"""Validation of user-given names and their encoding into D-Bus object path elements."""

from __future__ import annotations

import re
import uuid as _uuid

from ..errors import InvalidArgument

MAX_NAME_BYTES = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_name(name: str, what: str = "name") -> str:
    """Accept a pool or volume name, or raise InvalidArgument saying why not.

    A name becomes a file name (dir pool volumes, config files), so it may not be
    empty, '.', '..', contain '/', NUL or control characters, or exceed 255 bytes.
    """
    if not isinstance(name, str) or name == "":
        raise InvalidArgument(f"{what} must not be empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    if name in (".", ".."):
        raise InvalidArgument(f"{what} must not be '.' or '..'")
    if "/" in name:
        raise InvalidArgument(f"{what} must not contain '/'")
    if _CONTROL.search(name):
        raise InvalidArgument(f"{what} must not contain NUL or control characters")
    if name.startswith("-"):
        raise InvalidArgument(f"{what} must not start with '-'")
    return name


def validate_uuid(value: str) -> str:
    """Return the canonical (lower-case, dashed) form of a UUID, or raise InvalidArgument."""
    try:
        return str(_uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidArgument(f"'{value[:64]}' is not a valid UUID") from None


def encode_path_element(name: str) -> str:
    """Encode any name as a D-Bus object path element, reversibly and stably.

    Letters and digits stay; every other byte of the UTF-8 form becomes ``_xx``
    (lower-case hex), like systemd's bus_label_escape. The empty name becomes ``_``.
    """
    if name == "":
        return "_"
    if name.isascii():          # one C pass instead of a Python call per unsafe byte
        return name.translate(_ASCII_ESCAPES)
    return _UNSAFE.sub(_escape, name)


# every ASCII character that is not a letter or digit -> "_xx" (its byte, lower-case hex)
_ASCII_ESCAPES = {c: f"_{c:02x}" for c in range(128) if not chr(c).isalnum()}


def _escape(match: re.Match[str]) -> str:
    return "".join(f"_{b:02x}" for b in match.group().encode("utf-8", "surrogatepass"))


def decode_path_element(element: str) -> str:
    """Inverse of encode_path_element."""
    if element == "_":
        return ""
    data = bytearray()
    i = 0
    while i < len(element):
        if element[i] == "_":
            data.append(int(element[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(element[i].encode())
            i += 1
    return data.decode("utf-8", "surrogatepass")
