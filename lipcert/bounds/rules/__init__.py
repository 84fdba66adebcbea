"""One module per family of ops; lipcert.bounds imports every one of them."""
