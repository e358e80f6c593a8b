"""Tools built on the compiler: the demo."""
