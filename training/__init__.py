"""Generation and Dreambooth: everything that needs torch lives here, imported only when used."""
