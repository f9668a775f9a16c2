"""Base images: building, downloading and registering cloud-style disk images."""
