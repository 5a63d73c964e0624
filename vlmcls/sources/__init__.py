"""Where images and class lists come from: folders, list files and HF datasets listed as records, folder snapshots, class lists, and the one safe reader of the text files users hand us."""
