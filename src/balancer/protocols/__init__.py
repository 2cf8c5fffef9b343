"""Wire formats without I/O: parsers that take bytes and return values or precise errors."""
