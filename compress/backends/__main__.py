from compress.backends import _main

_main()
