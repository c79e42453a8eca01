;; A proxy-wasm (ABI 0.2.1) HTTP plugin that starts but traps on every request
;; (`unreachable` in proxy_on_request_headers): Envoy's failure_policy then decides, FAIL_CLOSED
;; answers 503 while FAIL_OPEN lets the requests after the failure through without the plugin.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (call $malloc (local.get 0)))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
)
