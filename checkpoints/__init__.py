"""The shipped checkpoints as a package, so they ship in the wheel and ``bus.resources.checkpoint_dir()`` finds
them."""
