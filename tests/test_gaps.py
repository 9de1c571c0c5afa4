"""A gap in the dump is never taken for corruption: copies of real
kdump-compressed dumps of healthy kernels with pages left out as a
makedumpfile that lags the kernel leaves them out (tests/damage.py:
excluded_copy), here the pages of the stable nodes that STABLE rmap_items
point at (rmap_item->head) while the items themselves stay in the dump."""

from __future__ import annotations

import json
from collections import Counter

import drgn
import pytest
from conftest import DUMPS, program_of, run_cli, run_on
from damage import dumped_pfns, excluded_copy, stable_node_pages
from drgn.helpers.linux.mm import pfn_to_virt


def kdump_compressed(d) -> bool:
    """The dump is a kdump-compressed file: QEMU's kdump-* (flattened) or a
    makedumpfile capture without -E."""
    made = d.truth.get("dump", {})
    if str(made.get("format", "")).startswith("kdump-"):
        return True
    return made.get("format") == "makedumpfile" and "-E" not in made.get("makedumpfile", "").split()


KDUMPS = [d for d in DUMPS if kdump_compressed(d)]


def alarms(report) -> set:
    return {(f["check"], f["rule"], f["address"]) for f in report["findings"]
            if f["severity"] in ("error", "warning")}


@pytest.fixture(params=KDUMPS, ids=[d.name for d in KDUMPS])
def gap(request, tmp_path):
    """(dump, excluded pfns, their direct-map addresses, the copy)."""
    dump = request.param
    prog = program_of(dump)
    pfns = stable_node_pages(prog, limit=2)
    if not pfns:
        pytest.skip("every page of stable nodes there also holds rmap_items or mm slots")
    copy = excluded_copy(dump.vmcore, tmp_path / "vmcore", pfns)
    return dump, pfns, [pfn_to_virt(prog, p).value_() for p in pfns], copy


def test_excluded_copy_reads_as_the_original_but_its_gaps(gap, tmp_path) -> None:
    """The harness: libkdumpfile says "Excluded page" for each page left
    out, and reads every other page as the original does."""
    from ksminspect.program import open_program

    dump, pfns, _, copy = gap
    prog = program_of(dump)
    whole = dumped_pfns(excluded_copy(dump.vmcore, tmp_path / "whole", []))
    kept = dumped_pfns(copy)
    assert sorted(set(whole) - set(kept)) == sorted(pfns) and len(kept) == len(whole) - len(pfns)
    gapped = open_program(str(copy), [str(dump.debug)])
    size = dump.truth.get("page_size", 4096)
    for pfn in pfns:
        with pytest.raises(drgn.FaultError, match="Excluded page"):
            gapped.read(pfn * size, size, True)
    for pfn in map(int, kept):
        assert gapped.read(pfn * size, size, True) == prog.read(pfn * size, size, True), hex(pfn)


def test_stable_nodes_the_dump_lacks_are_no_damage(gap) -> None:
    """STABLE rmap_items whose stable nodes are in pages the dump left out:
    check raises no error or warning the whole dump does not raise (on a
    healthy kernel: none), and says it cannot tell, naming the pages."""
    dump, pfns, pages, copy = gap
    result = run_cli("-c", str(copy), "-s", str(dump.debug), "check", "-f", "json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    print("excluded:", ", ".join(f"pfn {p:#x} ({a:#x})" for p, a in zip(pfns, pages)))
    print("cannot_tell:", json.dumps(report["cannot_tell"], indent=1))
    print("stderr:", result.stderr)
    whole = json.loads(run_on(dump, "check", "-f", "json").stdout)
    new = alarms(report) - alarms(whole)
    messages = [f["message"] for f in report["findings"] if (f["check"], f["rule"], f["address"]) in new]
    assert not new, (f"{len(new)} alarms the whole dump does not raise: "
                     f"{dict(Counter(c for c, _, _ in new))}; e.g. {messages[:3]}")
    said = " ".join(report["cannot_tell"].values())
    assert "lacks" in said, report["cannot_tell"]
    assert any(f"{a:#x}" in said for a in pages), (pages, report["cannot_tell"])
