;; A proxy-wasm (ABI 0.2.1) HTTP plugin: adds a response header named and valued by the plugin
;; configuration, whose first two JSON string values are read as name and value:
;; pluginConfig {"name": "x-wasm-greeting", "value": "hello"} -> x-wasm-greeting: hello.
;; (strings without escapes; a configuration without two values fails proxy_on_configure).
(module
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..16: out-parameters of host calls; the heap (a bump allocator) starts at 1024.
  (global $heap (mut i32) (i32.const 1024))
  (global $cfg (mut i32) (i32.const 0))
  (global $cfg_len (mut i32) (i32.const 0))
  (global $name (mut i32) (i32.const 0))
  (global $name_len (mut i32) (i32.const 0))
  (global $value (mut i32) (i32.const 0))
  (global $value_len (mut i32) (i32.const 0))

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

  ;; The `n`th string (0-based) between double quotes in the configuration: 1 and its place in
  ;; the out-parameters 0 (pointer) and 4 (length), or 0.
  (func $nth_string (param $n i32) (result i32)
    (local $i i32) (local $quotes i32) (local $start i32)
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (global.get $cfg_len)))
        (if (i32.eq (i32.load8_u (i32.add (global.get $cfg) (local.get $i))) (i32.const 34))
          (then
            (if (i32.eq (local.get $quotes) (i32.shl (local.get $n) (i32.const 1)))
              (then (local.set $start (i32.add (local.get $i) (i32.const 1)))))
            (if (i32.eq (local.get $quotes) (i32.add (i32.shl (local.get $n) (i32.const 1)) (i32.const 1)))
              (then
                (i32.store (i32.const 0) (i32.add (global.get $cfg) (local.get $start)))
                (i32.store (i32.const 4) (i32.sub (local.get $i) (local.get $start)))
                (return (i32.const 1))))
            (local.set $quotes (i32.add (local.get $quotes) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    ;; buffer 7: the plugin configuration; the host allocates it with malloc
    (if (i32.ne (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4))
                (i32.const 0))
      (then (return (i32.const 0))))
    (global.set $cfg (i32.load (i32.const 0)))
    (global.set $cfg_len (i32.load (i32.const 4)))
    (if (i32.eqz (call $nth_string (i32.const 1))) (then (return (i32.const 0))))
    (global.set $name (i32.load (i32.const 0)))
    (global.set $name_len (i32.load (i32.const 4)))
    (if (i32.eqz (call $nth_string (i32.const 3))) (then (return (i32.const 0))))
    (global.set $value (i32.load (i32.const 0)))
    (global.set $value_len (i32.load (i32.const 4)))
    (i32.const 1))

  ;; map 2: the response headers; 0: continue
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (global.get $name) (global.get $name_len)
                            (global.get $value) (global.get $value_len)))
    (i32.const 0))
)
