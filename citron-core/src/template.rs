//! `{{ name }}` templates in job descriptions.
