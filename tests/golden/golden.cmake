# Goldens from the official M+ code: for each fixture and scenario, mplus-probe runs the scenario
# and mplus-compare-golden checks every golden tensor (tests/fixtures/tiny-mplus/README.md).
# tests/gpu/run.sh runs the same goldens on the CUDA backend, with the same tolerances.
add_executable(mplus-compare-golden ${CMAKE_CURRENT_LIST_DIR}/compare_golden.cc)
target_link_libraries(mplus-compare-golden PRIVATE mplus_engine mplus_warnings)

# The last place mplus-probe --device=cuda looks for the plugin (engine::CudaPluginPath).
if(TARGET mplus_cuda_plugin)
  add_dependencies(mplus-probe mplus_cuda_plugin)
  set(probe_plugin_path "$<TARGET_FILE:mplus_cuda_plugin>")
else()
  set(probe_plugin_path "${CMAKE_INSTALL_PREFIX}/lib/libmplus_cuda.so")
endif()
target_compile_definitions(mplus-probe PRIVATE
  MPLUS_CUDA_PLUGIN_BUILD_PATH="${probe_plugin_path}")

# One golden test: mplus-probe [PROBE_ARGS] on scenario n of the fixture, compared within tolerance.
function(mplus_golden_test name fixture n tolerance probe_args)
  add_test(NAME ${name}
    COMMAND ${CMAKE_COMMAND}
      -DPROBE=$<TARGET_FILE:mplus-probe>
      "-DPROBE_ARGS=${probe_args}"
      -DCOMPARE=$<TARGET_FILE:mplus-compare-golden>
      -DSCENARIO=${MPLUS_FIXTURES_DIR}/${fixture}/scenario-${n}.json
      -DGOLDEN=${MPLUS_FIXTURES_DIR}/${fixture}/golden-${n}.safetensors
      -DOUT=${CMAKE_CURRENT_BINARY_DIR}/golden/${name}.safetensors
      -DTOLERANCE=${tolerance}
      -P ${CMAKE_CURRENT_LIST_DIR}/run_golden.cmake)
  set_tests_properties(${name} PROPERTIES LABELS golden TIMEOUT 300)
endfunction()

file(STRINGS ${CMAKE_CURRENT_LIST_DIR}/tolerances.txt golden_tolerances REGEX "^[^#]")
foreach(line ${golden_tolerances})
  separate_arguments(fields UNIX_COMMAND "${line}")
  list(GET fields 0 fixture)
  list(GET fields 1 tolerance)
  set(tolerance_${fixture} ${tolerance})
  foreach(n 1 2 3 4)
    mplus_golden_test(golden.${fixture}.scenario-${n} ${fixture} ${n} ${tolerance} "")
  endforeach()
endforeach()

# An fp8 KV cache (--kv_cache_dtype=fp8) is approximate; the bf16 fixture's goldens must still
# hold at bf16's tolerance (measured 2026-11-26: logits within 1e-2 relative, tokens identical).
foreach(n 1 2 3 4)
  mplus_golden_test(golden.tiny-mplus-bf16.fp8-kv.scenario-${n} tiny-mplus-bf16 ${n}
                    ${tolerance_tiny-mplus-bf16} "--kv_cache_dtype=fp8")
endforeach()

# The decoder LoRA folded into the base weights at load (--merge_decoder_lora, on by default on a
# GPU) moves results by one rounding of each merged weight: the goldens must still hold.
foreach(fixture tiny-mplus tiny-mplus-bf16)
  foreach(n 1 2 3 4)
    mplus_golden_test(golden.${fixture}.merged-lora.scenario-${n} ${fixture} ${n}
                      ${tolerance_${fixture}} "--merge_decoder_lora=true")
  endforeach()
endforeach()

# mplus-probe's --device handling: a bad value is refused; on a machine without a GPU (CI)
# --device=cuda fails with CUDA's error, not a crash; with a GPU it must match the golden.
add_test(NAME golden.probe-device
  COMMAND ${CMAKE_COMMAND}
    -DPROBE=$<TARGET_FILE:mplus-probe>
    -DCOMPARE=$<TARGET_FILE:mplus-compare-golden>
    -DHAVE_PLUGIN=$<TARGET_EXISTS:mplus_cuda_plugin>
    -DSCENARIO=${MPLUS_FIXTURES_DIR}/tiny-mplus/scenario-1.json
    -DGOLDEN=${MPLUS_FIXTURES_DIR}/tiny-mplus/golden-1.safetensors
    -DOUT=${CMAKE_CURRENT_BINARY_DIR}/golden/probe-device.safetensors
    -DTOLERANCE=${tolerance_tiny-mplus}
    -P ${CMAKE_CURRENT_LIST_DIR}/probe_device.cmake)
set_tests_properties(golden.probe-device PROPERTIES LABELS golden TIMEOUT 120)
