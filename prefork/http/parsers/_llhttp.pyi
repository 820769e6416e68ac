# The compiled build's binding of llhttp (_llhttp.c); absent from a pure Python install.
from collections.abc import Sequence

Parts = tuple[str, str, str, list[tuple[bytes, bytes]], dict[str, str] | None, int]

def parse(buf: bytes, whole: bool, known: bool, /) -> Parts | str | None: ...
def configure(names: Sequence[str], /) -> None: ...
