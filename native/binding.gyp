{
  "targets": [
    {
      "target_name": "qcow_fuse3",
      "sources": ["src/fuse3.c", "src/fuse-uring.c", "src/sector-crypt.c", "src/inflate-cluster.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "<!@(pkg-config --cflags fuse3 liburing)"],
      "libraries": ["<!@(pkg-config --libs fuse3 liburing)"]
    },
    {
      "target_name": "qcow_copy",
      "sources": ["src/copy-range.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
