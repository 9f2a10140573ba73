"""Layer 1, the services plugins and the engine share: data, training, the defense context, guards, crafting.

``data`` (splits, batches), ``training`` (build, train and cache models), ``joint``
(train several networks as one), ``context`` (``DefenseContext``), ``guards`` (model
checks, budget checks), ``crafting`` (running an attack over batches, counting passes),
``allocator`` (the CPU allocator tuning).
"""
