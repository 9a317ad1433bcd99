import starsmith  # noqa: F401  (configures the Polars allocator before Polars is imported)
