"""Print how close the losses came to the released code's golden outputs:
per comparison, the entries, how many are identical and the largest
relative difference (the figures docs/parity.md reports), at the end of
``python -m pytest tests/parity``."""
from parity_data import FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section('parity with the released code (losses)')
    for what, entries, identical, worst, key in FIGURES:
        terminalreporter.write_line(
            f'{what}: {entries} seed-independent entries, {identical} '
            f'identical, worst relative difference {worst:.1e} ({key})')
