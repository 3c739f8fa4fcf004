"""Storage: the tables every backend reads and the service writes, as numbered SQL
migrations, and how they are applied. Below ``compiler``, ``runtime`` and ``api``."""
