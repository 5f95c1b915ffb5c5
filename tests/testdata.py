"""Where libvirt's XML test files are: ../shared/testdata/libvirt beside the checkout,
or $EXAMPLE_STORAGE_TESTDATA. Missing data skips the tests on a developer's machine but
fails them under CI=true, where shared/ is always beside the clone."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBVIRT_TESTDATA = Path(
    os.environ.get("EXAMPLE_STORAGE_TESTDATA") or REPO.parent / "shared" / "testdata" / "libvirt"
)


def needs_testdata(subdir: str):
    """A pytest mark: skip (or, in CI, fail) when ``LIBVIRT_TESTDATA/subdir`` is absent."""
    present = (LIBVIRT_TESTDATA / subdir).is_dir()
    if not present and os.environ.get("CI") == "true":
        raise RuntimeError(f"libvirt test data missing in CI: {LIBVIRT_TESTDATA / subdir}")
    return pytest.mark.skipif(not present, reason=f"libvirt test data missing: "
                              f"{LIBVIRT_TESTDATA / subdir}")
