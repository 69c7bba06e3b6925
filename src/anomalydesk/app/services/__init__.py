"""The app's services layer (Qt-free): `CoreClient` (the process's Redis clients and executors), the
session's readers, the operations panels ask for, and the child-process jobs. It feeds the model
layer and never imports Qt or the widgets."""
