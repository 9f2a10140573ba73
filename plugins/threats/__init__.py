"""Built-in threat models, registered through entry points like a third party's."""
