"""What happens to a complete file: identify, verify or convert, quarantine, record in the manifest."""
