"""Short, self-contained examples of ltjax's functional API in raw JAX."""
