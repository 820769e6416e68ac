# The compiled build's binding of llhttp (_llhttp.c); absent from a pure Python install.
Parts = tuple[str, str, str, list[tuple[bytes, bytes]]]

def parse(buf: bytes, whole: bool, /) -> Parts | str | None: ...
