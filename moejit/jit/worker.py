"""Child process that compiles one module with torch.utils.cpp_extension.load (see moejit.jit.build).

It does not keep the library loaded: the parent decides whether to load it (it may be for another arch).
"""

import json
import sys


def main(request_json: str) -> None:
    from torch.utils import cpp_extension

    request = json.loads(request_json)
    # Build only: cpp_extension.load would otherwise dlopen the result, which fails for a foreign arch's driver
    # needs and is pointless here. The parent process loads the library from the cache.
    if hasattr(cpp_extension, "_import_module_from_library"):
        cpp_extension._import_module_from_library = lambda name, path, is_python_module: path
    cpp_extension.load(
        name=request["name"],
        sources=request["sources"],
        extra_cflags=request["extra_cflags"],
        extra_cuda_cflags=request["extra_cuda_cflags"],
        extra_include_paths=request["extra_include_paths"],
        build_directory=request["build_directory"],
        verbose=True,
        with_cuda=True,
        is_python_module=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])
