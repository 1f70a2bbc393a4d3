"""Storage: the only code that touches SQLite.

Every operation is one transaction function: a plain function of a
``sqlite3.Connection`` that the Database runs on its connection thread in a
single hop (DESIGN.md section 2: batch with executemany, never await per row).
"""
