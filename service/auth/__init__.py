"""Access control: bearer API tokens with scopes, checked by one dependency on every router but health's."""
