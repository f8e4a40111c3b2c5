"""Upload ingress: check images, store them in the blob store, publish one task per image."""
