"""The host-read counter of tools/analysis/count_host_syncs.py
(projects/codetr/analysis/host_syncs.py) counts what a plain function does,
op by op."""
import torch

from projects.codetr.analysis import host_syncs


def test_counts_scalar_reads_and_data_dependent_ops():
    x = torch.arange(-5.0, 5.0)

    def step():
        for _ in range(3):
            x.sum().item()  # three scalar reads
        bool(x.max() > 0)  # a fourth
        (x > 0).nonzero()
        x[x > 1]  # boolean indexing: one more nonzero
        torch.unique(x.round())

    by_op, by_line = host_syncs.count_host_reads(step)
    assert by_op['aten::_local_scalar_dense'] == 4
    assert by_op['aten::nonzero'] == 2
    assert by_op['aten::_unique2'] == 1
    # this file is in none of the packages that reads are attributed to
    assert all(where == '(other)' or where.startswith('torch/')
               for where, _ in by_line)
    assert sum(by_line.values()) == sum(by_op.values())
