"""The node agent (`meshway node`): a kubelet for the network-namespace runtime. See README
"Nodes (`meshway node`)"."""
