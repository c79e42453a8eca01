;; A proxy-wasm (ABI 0.2.1) HTTP plugin: answers 403 to requests whose path starts with the first
;; JSON string value of the plugin configuration: pluginConfig {"prefix": "/admin"} denies
;; /admin and /admin/x. Other requests continue.
(module
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) ":path")
  (data (i32.const 80) "wasm_denied")
  (data (i32.const 96) "denied by wasm plugin\n")
  ;; 0..16: out-parameters of host calls; the heap (a bump allocator) starts at 1024 and goes
  ;; back to $mark (what the configuration holds) at every request.
  (global $heap (mut i32) (i32.const 1024))
  (global $mark (mut i32) (i32.const 1024))
  (global $prefix (mut i32) (i32.const 0))
  (global $prefix_len (mut i32) (i32.const 0))

  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (call $malloc (local.get 0)))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $cfg i32) (local $len i32) (local $i i32) (local $start i32)
    (if (i32.ne (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4))
                (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $cfg (i32.load (i32.const 0)))
    (local.set $len (i32.load (i32.const 4)))
    ;; the bytes between the third and fourth double quotes: {"prefix": "<here>"}
    (local.set $start (i32.const -1))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $cfg) (local.get $i))) (i32.const 34))
          (then
            (if (i32.eq (global.get $prefix_len) (i32.const 2))
              (then (local.set $start (i32.add (local.get $i) (i32.const 1)))))
            (if (i32.eq (global.get $prefix_len) (i32.const 3))
              (then
                (global.set $prefix (i32.add (local.get $cfg) (local.get $start)))
                (global.set $prefix_len (i32.sub (local.get $i) (local.get $start)))
                (global.set $mark (global.get $heap))
                (return (i32.const 1))))
            (global.set $prefix_len (i32.add (global.get $prefix_len) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $path i32) (local $len i32) (local $i i32)
    (global.set $heap (global.get $mark))
    ;; map 0: the request headers
    (if (i32.ne (call $get_header (i32.const 0) (i32.const 64) (i32.const 5) (i32.const 0) (i32.const 4))
                (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $path (i32.load (i32.const 0)))
    (local.set $len (i32.load (i32.const 4)))
    (if (i32.lt_u (local.get $len) (global.get $prefix_len)) (then (return (i32.const 0))))
    (block $differs
      (loop $compare
        (if (i32.ge_u (local.get $i) (global.get $prefix_len))
          (then
            (drop (call $send_local_response (i32.const 403) (i32.const 80) (i32.const 11)
                                             (i32.const 96) (i32.const 22) (i32.const 0) (i32.const 0)
                                             (i32.const -1)))
            (return (i32.const 1))))  ;; 1: stop iteration (the local response is sent)
        (br_if $differs (i32.ne (i32.load8_u (i32.add (local.get $path) (local.get $i)))
                                (i32.load8_u (i32.add (global.get $prefix) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $compare)))
    (i32.const 0))
)
