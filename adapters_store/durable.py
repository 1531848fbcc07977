"""Crash-safe file writes, shared by every package. They live in `training.durable`, the lowest
package (it imports no other graft package), so the trainer's process uses the same helpers as the
gateway without importing `adapters_store`."""

from training.durable import (fsync_dir, fsync_file, fsync_tree, make_dirs_durably, replace_durably,
                              temp_sibling, write_bytes_durably)

__all__ = ["fsync_dir", "fsync_file", "fsync_tree", "make_dirs_durably", "replace_durably", "temp_sibling",
           "write_bytes_durably"]
