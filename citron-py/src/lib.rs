//! Python bindings (pyo3): the `citron` package.
