{
  "variables": {
    # liburing is optional: without it the addon builds with fuse-uring-none.c (no -o fuse_uring rings).
    # Override with `node-gyp rebuild -- -Dhave_liburing=0` to build that variant where liburing is.
    "have_liburing%": "<!(pkg-config --exists liburing && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "qcow_fuse3",
      "sources": ["src/fuse3.c", "src/sector-crypt.c", "src/inflate-cluster.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"],
      "conditions": [
        ["have_liburing==1", {
          "sources": ["src/fuse-uring.c"],
          "cflags": ["<!@(pkg-config --cflags liburing)"],
          "libraries": ["<!@(pkg-config --libs liburing)"]
        }, {
          "sources": ["src/fuse-uring-none.c"]
        }]
      ]
    },
    {
      "target_name": "qcow_copy",
      "sources": ["src/copy-range.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
