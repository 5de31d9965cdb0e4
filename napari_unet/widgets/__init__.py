"""napari dock widgets (Qt). They run the core's generators in thread workers and only touch
layers from the workers' callbacks on the Qt thread."""
