"""The project's configs as a package, so they ship in the wheel and ``bus.resources.config_dir()`` finds them."""
