"""Statistics for forwards that ran only some of their blocks (MixCache's block steps, and the
diffusers baselines, whose blocks are counted by hooks on the blocks themselves).

``base.ForwardRecord`` knows two cases: every block ran, or the whole stack was skipped. A record
that ran ``n`` of ``L`` blocks is given the ``PartialRecord`` class (a ``__class__`` swap: the base
transformer hook creates the record before the method knows what will run), which subtracts the
reused blocks from the executed count. Attention modules of a reused block are reported through
``ForwardRecord.reuse_attention``, so ``attention_compute_ratio`` stays consistent.
"""

from __future__ import annotations

from . import base


class PartialRecord(base.ForwardRecord):
    """A forward record in which ``blocks_reused`` blocks (per CFG row run) did not execute."""

    blocks_reused = 0

    def counts(self):
        run, total, attn = super().counts()
        if self.blocks_skipped:
            return run, total, attn
        return max(0, run - self.blocks_reused * self.rows()), total, attn


def mark_partial(record: base.ForwardRecord, blocks_reused: int, attention_kinds: list[list[str]] = ()) -> None:
    """Record that ``blocks_reused`` blocks were reused; ``attention_kinds`` lists, per reused block,
    the attention kinds it holds (their computations are reused too)."""
    if blocks_reused <= 0:
        return
    record.__class__ = PartialRecord
    record.blocks_reused = blocks_reused
    for kinds in attention_kinds:
        for kind in kinds:
            record.reuse_attention(kind)


def block_attention_kinds(layout: base.Layout, transformer) -> list[list[str]]:
    """Per block of the stack, the attention kinds it holds (for ``mark_partial``)."""
    return [
        [kind for attr, kind in layout.attention_attrs.items() if getattr(block, attr, None) is not None]
        for _, block in layout.blocks(transformer)
    ]
