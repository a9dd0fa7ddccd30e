"""PyTorch's side of ``fastnn bench``: the same network (``model.to_torch()``,
fastnn's weights copied), BCEWithLogitsLoss and torch.optim's SGD or Adam,
trained on the same batches in order."""

import torch


def eager_epoch(model, optimizer, X, y, batch, lr):
    """PyTorch eager on the CPU.

    Parameters
    ----------
    model : fastnn Sequential in float32
    optimizer : str, "sgd" or "adam"
    X : ndarray (n_samples, d_in), float32
    y : ndarray (n_samples,), float32 labels in {0, 1}
    batch : int, the batch size (n_samples is a multiple of it)
    lr : float, the learning rate

    Returns
    -------
    callable
        ``epoch()``: one epoch over the batches of X in order.
    """
    net = model.to_torch()
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch():
        net.train()
        for start in range(0, Xt.shape[0], batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(Xt[start:start + batch])[:, 0], yt[start:start + batch])
            loss.backward()
            opt.step()
    return epoch


def cuda_graphs_epoch(model, optimizer, X, y, batch, lr):
    """PyTorch on the GPU, one training step captured into a CUDA graph
    (PyTorch's recipe: warm up on a side stream, capture, then copy each
    batch into the captured input tensors and replay), the data on the GPU.
    Arguments and result as eager_epoch's; ``epoch()`` synchronizes before
    it returns."""
    net = model.to_torch().cuda()
    opt_class = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_class(net.parameters(), lr=lr,
                    **({} if optimizer == "sgd" else {"capturable": True}))
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    static_x, static_y = Xt[:batch].clone(), yt[:batch].clone()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        loss_fn(net(static_x)[:, 0], static_y).backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()

    def epoch():
        for start in range(0, Xt.shape[0], batch):
            static_x.copy_(Xt[start:start + batch])
            static_y.copy_(yt[start:start + batch])
            graph.replay()
        torch.cuda.synchronize()
    return epoch
