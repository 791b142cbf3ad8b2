"""When device stack tests skip and when they fail (CI must never skip them silently)."""

from __future__ import annotations

from tests.stack.prereq import Facts, Verdict, verdict

READY = Facts(root=True, ci=True, missing=(), loop_support=True)


def test_everything_present_runs() -> None:
    assert verdict(READY) is None


def test_not_root_skips_locally_but_fails_in_ci() -> None:
    local = verdict(Facts(root=False, ci=False, missing=(), loop_support=True))
    ci = verdict(Facts(root=False, ci=True, missing=(), loop_support=True))
    assert local is not None and local.action == "skip" and "root" in local.reason
    assert ci is not None and ci.action == "fail" and "CI=true must not skip" in ci.reason


def test_missing_tools_fail_with_the_fix_even_locally() -> None:
    got = verdict(Facts(root=True, ci=False, missing=("mkfs.exfat", "parted"), loop_support=True))
    assert got == Verdict(
        "fail", "device stack tools missing: mkfs.exfat, parted; run `make system-deps`"
    )


def test_no_loop_support_fails() -> None:
    got = verdict(Facts(root=True, ci=False, missing=(), loop_support=False))
    assert got is not None and got.action == "fail" and "modprobe loop" in got.reason
