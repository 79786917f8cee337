"""Research projects built on densedpo_jax; the library never imports them."""
