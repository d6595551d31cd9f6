//! The stub image: media types, labels and the layout of the runnable stub that carries the index.
