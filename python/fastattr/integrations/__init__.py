"""Drop-in adapters with the signatures of the libraries people already use."""
