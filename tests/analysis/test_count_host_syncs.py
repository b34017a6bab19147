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


def test_one_hot_range_checks_are_marked_cpu_only():
    """``F.one_hot`` given the class count reads the labels' range on the
    CPU only; a read of the same line outside it stays unmarked."""
    labels = torch.tensor([0, 2, 1])

    def step():
        torch.nn.functional.one_hot(labels, num_classes=4)
        labels.max().item()

    _, by_line = host_syncs.count_host_reads(step)
    marked = sum(n for (where, _), n in by_line.items()
                 if where.endswith(host_syncs.CPU_ONLY_MARK))
    assert marked >= 1
    assert sum(by_line.values()) - marked == 1
