"""The ``ppp`` command line: parse, call the library, print. No SQL lives here."""
